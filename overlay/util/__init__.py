"""Small helpers that know nothing of the network: backoff, atomic files, programs, names,
true/false."""
