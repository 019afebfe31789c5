"""The outreach engine: contacts, campaigns, templates, send-time checks and planning."""
