"""The script library: scripts stored once, as reviewed, with their sha256 (Mist v2
/api/v2/scripts)."""
