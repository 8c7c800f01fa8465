"""streaming_module: real-time streaming for LangGraph workflows."""
