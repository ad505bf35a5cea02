"""Reading a results store: typed rows grouped and compared, statistics, markdown tables, the
HTML page."""
