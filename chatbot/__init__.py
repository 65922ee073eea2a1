"""Web and terminal chat with the trained persona adapters (python -m chatbot, python -m chatbot.cli)."""
