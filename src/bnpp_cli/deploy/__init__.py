"""What ships: the device and edge halves (file format, runtime modules), export, predict, the
request protocol, the edge server (connections, batching, compute) and the device client."""
