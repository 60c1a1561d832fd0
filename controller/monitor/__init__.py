"""Time series: the embedded TSDB, the query language, and (later) rules."""
