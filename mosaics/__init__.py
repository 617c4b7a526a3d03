"""jeo-tiler mosaics: the scene catalog, reading scenes and compositing them per tile or window."""
