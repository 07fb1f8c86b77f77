"""foalnet.features stage."""
