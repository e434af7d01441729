"""Test helpers: real servers on loopback (SMTP, a Twilio REST double) and their fixtures."""
