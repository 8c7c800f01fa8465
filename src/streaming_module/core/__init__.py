"""Pure logic with no asyncio and no I/O: token buffering, filters, progress/ETA, replay log,
clock, rate windows. Tested with plain values and a fake clock. (The wire protocol is in
:mod:`streaming_module.protocol`.)"""
