"""The Ray edge: the Ray Train driver and worker loop (one fit, or one per stage), teachers served
as actors, Ray Jobs submission (`jobs`), and the fail-fast check of cluster addresses (`reachability`)."""
