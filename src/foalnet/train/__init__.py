"""foalnet.train stage."""
