"""Jobs: long actions (cloud calls) run in the background, with progress and a result."""
