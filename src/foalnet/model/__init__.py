"""foalnet.model stage."""
