"""Machines: every computing resource Overcast knows, whatever cloud or agent it came from."""
