"""foalnet.data stage."""
