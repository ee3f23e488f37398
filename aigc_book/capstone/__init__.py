"""The capstone (chapter 8): a tiny ChatGPT from nothing to a chat.

Introduced in chapter 8, section "The recipe in one command".
"""
