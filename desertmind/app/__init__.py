"""The interactive viewer (Gradio): ``desertmind app``."""
