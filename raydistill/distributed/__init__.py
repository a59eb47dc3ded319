"""The Ray backend: a Ray Train driver over the whole curriculum, and teachers served as actors."""
