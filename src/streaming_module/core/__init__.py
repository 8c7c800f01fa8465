"""Pure logic with no asyncio and no I/O: token buffering, filters, progress/ETA, replay log,
wire codec. Tested with plain values and a fake clock."""
