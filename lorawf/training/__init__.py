"""What to train: the plan from the dataset, the dataset scan, run names. Pure: no server, no sockets."""
