"""Runtime: the engine over animation backends (`engine`), the offline pipeline (`offline`)."""
