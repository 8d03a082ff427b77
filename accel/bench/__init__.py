"""accel bench: capture backends against an explicit proxy, on real traffic, in a lab of pods."""
