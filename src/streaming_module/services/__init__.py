"""The services: token streaming, event processing, progress tracking (re-exported by the
package root)."""
