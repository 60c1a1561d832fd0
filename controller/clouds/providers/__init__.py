"""Provider adapters: one package per provider family behind :class:`base.Adapter`."""
