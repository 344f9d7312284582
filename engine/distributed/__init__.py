"""Tensor parallelism on torch.distributed: the group and its collectives
(`parallel_state`), rank 0's driver of the workers (`executor`), a worker process
(`worker`) and what they say to each other (`messages`)."""
