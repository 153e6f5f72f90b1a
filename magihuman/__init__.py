"""daVinci-MagiHuman generation engine: usable without any UI."""
