"""gridwatch: streaming IoT and video-sensor ingestion for city grid-governance command centres."""
__version__ = "0.1.0"
