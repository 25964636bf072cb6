"""The tiered mixed-precision search (global → block → module). Not implemented yet."""
