"""Running things on machines: scripts and ad-hoc commands (through the agent's stream or
over SSH), fanned out to many machines at once, with live output kept with the job."""
