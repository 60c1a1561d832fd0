"""Schedules: run a script, a machine action or a notification on machines chosen by ids,
tags or age, on an interval, a crontab or once; machine expiration is built on them."""
