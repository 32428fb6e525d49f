"""track.py live mode: sources, online tracking, the WebSocket stream (README "Live tracking")."""
