from services.wallet.main import run

run()
