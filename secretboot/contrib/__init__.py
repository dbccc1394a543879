"""Framework integrations, each imported only when asked for: ``secretboot.contrib.<framework>``."""
