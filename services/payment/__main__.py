from services.payment.main import run

run()
