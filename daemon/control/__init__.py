"""The control API: HTTP on loopback or a Unix socket, for the robot's other software."""
