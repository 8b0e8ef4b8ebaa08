from services.payout.main import run

run()
