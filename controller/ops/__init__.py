"""Operating a controller: preparing a data directory (``--init``), backups and restores,
``overcast doctor``, and the configuration reference generated from the settings."""
