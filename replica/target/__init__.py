"""The ML replica as a database: mirrored schema, progress rows, the pgml install."""
