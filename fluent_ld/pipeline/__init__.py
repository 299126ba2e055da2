"""The path of a request through one node: routing, the pool of processes that decode, map and encode, and the admission that hands the result to an output."""
