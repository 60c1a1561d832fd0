"""SSH keys: a central store of key pairs (private halves sealed), per organisation.

(``controller/keys.py`` is the aiohttp AppKeys module, hence the name.)"""
