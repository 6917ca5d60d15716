"""Small helpers shared by the Rasa server, the NLU components and the action server."""
