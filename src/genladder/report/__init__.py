"""The report stage: claim verdicts (claims), figures (plots) and Markdown/HTML pages (document, render)."""
