"""Things on the robot: microphone, speaker, VAD. Vendor libraries are imported lazily."""
