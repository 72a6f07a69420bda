"""Base against tuned, block by block: CKA, weight change, probes, pooling, same-seed renders, and the report's
assembly."""
