"""What users run beside the daemon, never on the robot's runtime path: the loopback stand-in
services (``stubs``), the benchmarks and evaluations (``bench``) and the demo.

The runtime (everything else under ``daemon/``, and ``states``, ``hardware``) never imports this
package; only the CLI registers its subcommands. ``tests/test_layout.py`` checks both."""
