"""The kit every coinstream service uses: contracts, settings, Kafka and PostgreSQL plumbing."""
