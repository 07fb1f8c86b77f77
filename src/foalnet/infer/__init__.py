"""foalnet.infer stage."""
