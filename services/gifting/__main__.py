from services.gifting.main import run

run()
