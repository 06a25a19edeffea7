"""symgrad's compiled models inside other frameworks (each module imports its framework only
when it is used)."""
