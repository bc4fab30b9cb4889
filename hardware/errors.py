"""The one exception hardware adapters raise.

It derives from ``Exception`` only: ``hardware`` may not import ``daemon``, so it cannot sit
under ``daemon.errors.VoiceDaemonError``. ``daemon.errors`` re-exports it and draws it as a
root of its own.
"""


class HardwareError(Exception):
    """A device is missing, cannot be opened, or failed while in use.

    The message names the device (``"microphone 'wav:question.wav'"``) and what went wrong.
    """

    service = "audio"
    """What a failed turn names as the failed part (``turn_failed service=audio``)."""
