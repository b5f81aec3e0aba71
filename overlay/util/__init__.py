"""Small shared helpers with no knowledge of the network: backoff, atomic files, programs, names, text."""
