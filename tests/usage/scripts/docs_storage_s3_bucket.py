from prefect_aws import AwsCredentials, S3Bucket

aws = AwsCredentials(aws_access_key_id="AKIA...", aws_secret_access_key="...", region_name="eu-west-1")
# for an S3-compatible server, add aws_client_parameters=AwsClientParameters(endpoint_url="https://...")
aws.save("images-aws")
S3Bucket(bucket_name="my-images", bucket_folder="gpt-image", credentials=aws).save("images")
