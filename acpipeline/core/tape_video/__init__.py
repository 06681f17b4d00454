"""A tape's video blob and poster frame, from the platform's tape ZIP (or from an MP4 made elsewhere).

`zip_reading` (pure) reads the untrusted ZIP into a folder of checked frames, `timing` (pure) finds the frame
rate, `poster` (pure) makes the JPEG poster frame, and `encode` runs ffmpeg. `limits` holds what they
share: the bounds a tape is held to and the one-line `TapeError`. The tape's record is `core/media/tape.py`.
"""
